// Package packaging holds what installs meshd on a Debian host: the systemd
// unit, the default and example configurations, the maintainer scripts and
// the nfpm configuration that `make package` turns into a .deb. Its test
// builds the package, inspects it and installs it into a throwaway root.
package packaging
