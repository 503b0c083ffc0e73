"""The workflows: each combines data, models, relatedness methods and decisions into one
job a user runs, and writes its results (the command line calls these).

- :mod:`taskrel.pipelines.experiment` — one training run end to end;
- :mod:`taskrel.pipelines.compare` — several relatedness methods against a resampled
  ground truth, with noise ceilings and verdicts;
- :mod:`taskrel.pipelines.grouping` — groups of tasks from a relatedness matrix, checked
  by training (group-outcome predictors: :mod:`taskrel.decisions`);
- :mod:`taskrel.pipelines.selection` — removing training examples MTIF predicts to hurt;
- :mod:`taskrel.pipelines.task_selection` — dropping whole source tasks predicted to hurt
  a target;
- :mod:`taskrel.pipelines.report` — the HTML report of a comparison;
- :mod:`taskrel.pipelines.demo` — the default job of ``taskrel demo``.

This floor sits above the method layers (``data``, ``models``, ``training``,
``relatedness``, ``decisions``): nothing there imports from here.
"""
