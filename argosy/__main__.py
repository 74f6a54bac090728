from argosy.cli.main import main

main()
