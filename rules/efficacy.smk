# target efficacy (DESIGN.md §10). Being written.
