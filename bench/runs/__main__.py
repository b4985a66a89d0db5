from bench.runs.bench import main

main()
