"""The drover management appliance: database, REST API, Kerberos, boot service and CLI."""
