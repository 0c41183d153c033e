"""Customer-service tasks: prompt templates, Classify label sets and calibration, feedback, evaluation."""
