"""The training engine shared by pretraining and fine-tuning: accelerator and optimizer setup,
the step (`step`, loss balancing in `balancing`), learning-rate factors (`lr`), checkpoints
(`checkpoint`), DeepSpeed (`deepspeed_support`) and run logging (`monitor`)."""
