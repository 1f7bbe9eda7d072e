"""ERNIE 2.0 continual multi-task pretraining: the task contract (`registry`), examples and
their streams (`examples`, `stream`, `loader`), the schedule (`schedule`), the model (`model`,
`heads`, `losses`, `packing`), the run (`config`, `state`, `trainer`) and releases (`export`).
The objectives themselves are the modules of the top-level `pretrain_tasks` package."""
