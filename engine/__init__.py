"""riskstream engine: settings, schemas, the scoring pipeline, the Faust app and the CLI."""
