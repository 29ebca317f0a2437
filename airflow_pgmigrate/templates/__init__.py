"""DAG templates: a validated migration config in, a DAG (or the tasks for your own DAG) out."""
