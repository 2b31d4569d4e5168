"""Reading and writing the Kubernetes objects canarist manages: Deployments, Services, Events."""
