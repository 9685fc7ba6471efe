"""Kerberos for the appliance: an embedded MIT KDC or an existing realm, principals and keytabs via kadmin."""
