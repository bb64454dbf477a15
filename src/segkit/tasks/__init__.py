"""What the entry points in ``src/`` run: one module per task (train, evaluate, predict, export, benchmark).

Each task is a function of plain arguments (a loaded model, a data module, an inference mode, paths, numbers);
``<task>_from_config(cfg)`` beside it maps the composed Hydra config onto them, so defaults live in the YAML
(``conf/<entry>.yaml``) only. Training takes the whole config: it builds every object from its groups.
The parts the tasks share (loading, inference modes, exporters, profiling, metrics) live outside this package.
"""
