"""Scripts that run the paper's recipe on top of the hf_vanilla_transformer package."""
