"""The observer role: captures the lab's TCP port with scapy and keeps the proof."""
