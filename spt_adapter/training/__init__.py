"""Training the units: `train` (the units-only loop, the student phase, interruption), `settings`
(TrainSettings, learning-rate schedule, results), `checkpoint` (run folders, logs, resume) and
`distributed` (DDP set-up and the seeded samplers).

What training reads comes from :mod:`spt_adapter.data` (images, tasks, datasets); using a trained
adapter (restore, evaluate, export) is :mod:`spt_adapter.inference`; the CLI's builders are in
:mod:`spt_adapter.commands.builders`. Until 0.1 restore, evaluate, export, images, data, builders and the
demo lived here: their old names still import, with a DeprecationWarning (:mod:`spt_adapter._moved`).
"""
