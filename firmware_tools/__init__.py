"""vrclip.firmware_tools: switch-controller protocol and firmware tools, VNA profiles, hardware self-test."""
