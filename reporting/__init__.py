"""Reporting: learning curves, run histories, plots and the one table builder of every report."""
