"""Scripts that run the paper's recipe on top of the hf_vanilla_transformer package.

The repository's `training/` folder, installed under the import name `hf_vanilla_transformer_training`
(`python -m hf_vanilla_transformer_training.train ...`, or the console command `vanilla-transformer-train`).
"""
