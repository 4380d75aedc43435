"""crdb-federation's policy pack (pulumi-policy): every rule in rules.py, mandatory."""

from pulumi_policy import EnforcementLevel, PolicyPack, ResourceValidationPolicy

from rules import RULES


def _validator(rule):
    def validate(args, report_violation):
        for message in rule(args.resource_type, args.props, args.urn):
            report_violation(message)
    return validate


PolicyPack(
    name="crdb-federation",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[ResourceValidationPolicy(name=name, description=description, validate=_validator(rule))
              for name, (description, rule) in RULES.items()],
)
