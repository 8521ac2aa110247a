"""Everything that knows Airflow's metadata DB: its schemas, its rows, its XCom encodings."""
