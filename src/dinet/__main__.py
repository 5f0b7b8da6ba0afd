from dinet.cli import main

main()
