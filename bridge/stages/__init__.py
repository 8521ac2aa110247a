"""The stages of a refresh cycle, in order: DAG runs, task instances, business values, and
the gauges of now. Each stage declares the metric families it computes."""
