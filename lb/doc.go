// Package lb is mpshim's load balancer: one service address (a VIP) served
// by many INS. This package holds the Pool, the INS behind one balancer with
// their weights and states (what `spawn`, `kill`, an INS's death, a weight
// change or a drain turn into), and their status; the parts are in
// subpackages:
//
//	lb/maglev     the Maglev lookup table (which INS a new flow gets)
//	lb/xdp        the XDP program and its maps (flow tables, steering)
//	lb/autoscale  when the pool grows or shrinks (decisions only)
package lb
