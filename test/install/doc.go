// Package install checks how mpshim is installed and run as a service:
// the daemon's readiness notification, make install and make uninstall
// into a staging directory, the systemd unit, and the Debian package built
// by make deb, installed with dpkg, serving nginx through `mpshim run`,
// upgraded and purged.
package install
