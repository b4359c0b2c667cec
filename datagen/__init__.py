"""editsynth data generation: config -> triples -> candidates -> scores -> shards."""
