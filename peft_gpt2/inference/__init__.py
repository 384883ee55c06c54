"""Running a model: batched generation with its settings, and teacher-forced scoring of reference answers."""
