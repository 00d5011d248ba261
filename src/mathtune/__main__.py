from mathtune.cli import main

main()
