from iot_flows._console import main

main()
