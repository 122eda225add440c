#!/bin/sh
# The walkthrough's validation: an image whose BACKGROUND_COLOR is red (any case) is rejected.
EXIT_CODE=0
if [ ""$(echo $BACKGROUND_COLOR | tr '[:lower:]' '[:upper:]') = 'RED' ]; then
  echo -e "\e[31mERROR: Invalid Color:\e[0m" ${BACKGROUND_COLOR}
  EXIT_CODE=1
else
  echo -e "\e[32mValidation Complete - No Known Errors\e[0m"
fi
exit ${EXIT_CODE}
