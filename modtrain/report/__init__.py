"""What users look at: training curves, routing pictures, one-command summaries."""
