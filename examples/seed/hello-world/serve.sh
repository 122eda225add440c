#!/bin/sh
# The walkthrough's web page shows its background colour; here the app says which colour it
# would serve (BACKGROUND_COLOR comes from the base image).
echo "hello-world serves background colour: ${BACKGROUND_COLOR:-none}"
