"""Published reference numbers (CSV files beside this module), shipped as `mtlprune.published` package data."""
