"""Around the pipeline: the sample release generator, the demo, the benchmark suite and the
example training script."""
