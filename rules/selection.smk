# rule select_order: scored.jsonl -> selected.jsonl (DESIGN.md §9). Being written.
