"""Development helpers (tests, benchmarks): not part of the pipeline package the notebook embeds."""
