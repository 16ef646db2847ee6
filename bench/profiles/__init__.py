"""Operator profiles (issue #8): the memory planner (``shapes``, ``planner``), shipped profile YAML files and
their loader (``store``), launch commands per backend (``render``) and SLO tuning against a live backend
(``tune``)."""
