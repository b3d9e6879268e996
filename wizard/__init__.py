from . import exchange_assign_partner
