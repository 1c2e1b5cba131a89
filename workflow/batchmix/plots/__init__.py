"""Figures of the report, one module per report section.

Plot functions take tables and arrays that the stages computed and return matplotlib figures;
they never read files and never compute statistics of their own.
"""
