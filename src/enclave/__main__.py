from enclave.cli import app

app()
