"""Around the pipeline: the sample release generator, the demo and the example training script."""
