"""Pressurised network hydraulics: EPANET runs (through wntr) and what they tell."""
