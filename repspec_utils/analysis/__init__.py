"""Analysis of committed result tables (pandas, no torch): tables, claims and verdicts, the results page, plotting."""
