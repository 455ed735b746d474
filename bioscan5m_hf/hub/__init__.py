"""Publishing on the Hugging Face Hub: ``push`` (planned, resumable uploads) and ``rules`` (the Hub's
and the dataset viewer's rules, as ``verify --hub`` checks them)."""
