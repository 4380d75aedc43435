"""The integration tier's k3s stand-in: what a local-cloud server 0 would run, from real Kubernetes components.

The local cloud's servers run nothing. For each stack whose server 0 is ACTIVE with its public address, the
stand-in reads the user data Nova holds, takes the k3s config and CA files it writes, and starts a real
control plane (kine with SQLite, kube-apiserver, kube-controller-manager, kube-scheduler from
scripts/install-kubernetes.sh) bound to that address, plus kwok's simulated kubelets for the stack's
servers. Containers never run: pods become Running and Ready, Job pods complete, and nothing else happens.
"""
