"""Kubernetes: manifests from a minimal intent (``corral k8s render``), the weight
cache's init step (``corral k8s fetch``) and the agent's preStop drain
(``corral k8s drain``). Needs the ``k8s`` extra (PyYAML) to render."""
