"""CanaryRelease v1alpha1: pydantic models, the CRD generated from them, and durations."""
