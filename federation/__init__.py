"""Operator tool for the whole federation: join every cloud at once with a live dashboard, previews,
removal of a member, a timeline report, and the cluster's status over SQL."""
