"""MT-DNN-style multi-task fine-tuning of released encoders."""
