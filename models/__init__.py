"""Model preparation for miners and validators: tiny test models, packaged weights."""
