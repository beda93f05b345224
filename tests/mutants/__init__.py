"""Equation-level mutants of rsseg and a runner that checks the default test run kills each one (``make mutants``)."""
