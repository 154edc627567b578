package main

// setns(2) is not in the frozen syscall package's table; its number on linux/amd64.
const sysSetns = 308
