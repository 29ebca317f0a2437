"""Notifiers: migration alerts through Airflow's notifier mechanism (``airflow.sdk.BaseNotifier``)."""
