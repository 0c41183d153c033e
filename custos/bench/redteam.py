"""A red-team set for PII detection: obfuscated identifiers and European languages, labelled, seeded.

The privacy benchmark's generated set (``custos.bench.privacy``) is shaped like the detector's own tests; this
set is shaped like input written to get past patterns, and like customers who do not write English. It grades
the detector, so it must not grade itself:

* **Two halves.** ``TUNING`` is for the people who improve the detector (and for the differential test);
  ``HELDOUT`` has its own carrier templates, its own seed, its own names, streets, towns, separators, bracket
  styles, reference labels, e-mail domains and URL shapes, and only ``custos bench privacy`` reads it.
  Detector changes are judged on the held-out half.
* **Names from elsewhere.** Person names are the hand-written lists below (rare given names and surnames per
  language), none of whose words is in the name lists the PERSON recognizer loads from Faker's locales
  (``custos.privacy.names.faker_name_lists``); a unit test keeps them disjoint. Streets and towns are
  hand-written too. Checksummed values are valid: card numbers pass Luhn, IBANs (Faker's, per country) pass
  mod 97, national numbers carry their check digits, phone numbers are valid for their region
  (``phonenumbers``).
* **Deterministic.** Message ``i`` of a half is built from its own ``random.Random`` seeded with the half's
  seed and ``i`` (string seeds hash with SHA-512, the same in every process), so ``generate(half, n)`` is the
  first ``n`` messages of any longer run, and a kind's ``make_sample(half, kind, seed)`` is the same message
  every time. Faker supplies the IBANs and Italian fiscal codes only, so the set changes with Faker's version
  only there (Faker is pinned).

Each message has a **kind** (``KINDS``: the obfuscation or language variant it tests, or a negative) and a
language. Its gold spans carry an entity type and the kind of the value: the values a kind varies carry the
kind's name (in a ``lang_*`` message, every value), the ordinary values around them (a name in a signature)
carry ``"plain"``. Negatives are prose that only looks like personal data (spelled separators in ordinary
sentences, Luhn-failing article numbers, times, prices, dates that are not birth dates) and have no spans.
Every piece of personal data in a message is labelled; what is not labelled is not personal data.
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Messages per half unless a count is given.
DEFAULT_COUNT = 1200

LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "it", "pt", "nl")

#: Gold entity types of the set. National identity numbers other than the US SSN are ``NATIONAL_ID``.
ENTITY_TYPES: tuple[str, ...] = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "NATIONAL_ID",
    "CUSTOMER_ID",
    "ACCOUNT_ID",
    "ORDER_ID",
    "TICKET_ID",
    "IP_ADDRESS",
    "DATE_OF_BIRTH",
    "STREET_ADDRESS",
    "LOCATION",
)


@dataclass(frozen=True)
class GoldSpan:
    """A labelled value: ``text[start:end]`` is personal data of ``entity_type``, obfuscated as ``kind``."""

    entity_type: str
    start: int
    end: int
    kind: str


@dataclass(frozen=True)
class RedTeamSample:
    """One labelled message of a half."""

    text: str
    spans: tuple[GoldSpan, ...]
    kind: str
    language: str
    half: str
    index: int

    @property
    def negative(self) -> bool:
        """Whether the message is a negative (no personal data at all)."""
        return self.kind.startswith("negative_")


@dataclass(frozen=True)
class NameBook:
    """The hand-written people and places of one language in one half."""

    first: tuple[str, ...]
    last: tuple[str, ...]
    streets: tuple[str, ...]
    #: (town, postcode prefix); the postcode is completed per message in the language's format.
    towns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Styles:
    """Formatting choices of a half, so the held-out half also differs in how values are written."""

    #: (open, close) around a spelled "at"/"dot" word, or around "@"/"." themselves when ``symbol`` is set.
    brackets: tuple[tuple[str, str, bool], ...]
    phone_separators: tuple[str, ...]
    card_separators: tuple[str, ...]
    #: language -> entity type -> loosely written labels for customer/account/order/ticket references.
    loose_labels: Mapping[str, Mapping[str, tuple[str, ...]]]
    #: language -> e-mail domains of private mail providers.
    email_domains: Mapping[str, tuple[str, ...]]
    #: Domains of other countries, for English messages with a foreign e-mail address.
    foreign_domains: tuple[str, ...]
    #: URL shapes: ``{host}`` plus one or more of ``{CUSTOMER_ID}``, ``{ORDER_ID}``, ``{ACCOUNT_ID}``,
    #: ``{TICKET_ID}``, ``{EMAIL_ADDRESS}``, ``{PERSON}``.
    url_shapes: tuple[str, ...]
    url_hosts: tuple[str, ...]


@dataclass(frozen=True)
class Half:
    """One half of the set: its seed, carrier templates, negatives, names and styles."""

    name: str
    seed: int
    #: language -> carrier templates with slots (``{person}``, ``{email}``, ... see ``SLOT_TYPES``).
    templates: Mapping[str, tuple[str, ...]]
    #: negative kind -> language -> templates with fillers (``{price}``, ``{time}``, ... see ``FILLERS``).
    negatives: Mapping[str, Mapping[str, tuple[str, ...]]]
    names: Mapping[str, NameBook]
    styles: Styles


@dataclass(frozen=True)
class Kind:
    """One obfuscation or language variant: the slot types it varies and the languages it appears in."""

    name: str
    description: str
    slots: tuple[str, ...]
    languages: tuple[str, ...]


def _words(text: str) -> tuple[str, ...]:
    """The whitespace-separated words of a data line (keeps the tables below short)."""
    return tuple(text.split())


def _phrases(text: str) -> tuple[str, ...]:
    """The "|"-separated phrases of a data line."""
    return tuple(part.strip() for part in text.split("|"))


def _towns(text: str) -> tuple[tuple[str, str], ...]:
    """Towns with postcode prefixes: "Celle 292 | Ripon" -> (("Celle", "292"), ("Ripon", ""))."""
    towns = []
    for phrase in _phrases(text):
        name, _, prefix = phrase.rpartition(" ")
        towns.append((name, prefix) if prefix.isdigit() else (phrase, ""))
    return tuple(towns)


_ALL = LANGUAGES
_NEGATIVE_SLOTS: tuple[str, ...] = ()

#: The kinds, in the order messages cycle through them (message ``i`` is of kind ``i % len(KINDS)``).
KINDS: Mapping[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("email_spelled", 'e-mail with spelled "at"/"dot" in the language', ("email",), _ALL),
        Kind(
            "email_bracketed", 'e-mail with bracketed separators: "[at]", "(dot)", "{at}"', ("email",), _ALL
        ),
        Kind("email_foreign_domain", "English message, e-mail at a .fr/.de/... domain", ("email",), ("en",)),
        Kind("phone_words", "phone number with digits written as words", ("phone",), _ALL),
        Kind("phone_mixed", "phone number in mixed digits and words", ("phone",), _ALL),
        Kind(
            "phone_separators",
            "phone number with dots, slashes, odd spacing or no separator",
            ("phone",),
            _ALL,
        ),
        Kind(
            "card_separators", "card number (valid Luhn) with dots, spaces, odd groups, none", ("card",), _ALL
        ),
        Kind(
            "iban_variants", "IBAN in lower case, irregular groups, broken by a line break", ("iban",), _ALL
        ),
        Kind("national_id", "SSN / national identity number with varied separators", ("id",), _ALL),
        Kind("reference_loose", "customer/account/order/ticket reference written loosely", ("ref",), _ALL),
        Kind(
            "ip_address", "IPv4 / IPv6 address, with a port, defanged or spaced", ("ip",), ("en", "de", "fr")
        ),
        Kind(
            "url_identifier",
            "URL that carries a reference, an e-mail or a name",
            ("url",),
            ("en", "de", "fr"),
        ),
        Kind("dob_words", "date of birth in words", ("dob",), _ALL),
        Kind("dob_numeric", "date of birth in numeric forms", ("dob",), _ALL),
        Kind(
            "broken_formatting",
            "value broken by a line break, a zero-width space or extra spaces",
            ("email", "phone", "card", "iban", "id"),
            ("en", "de", "fr"),
        ),
        Kind(
            "letter_case",
            "value in unusual letter case (upper, lower, alternating)",
            ("email", "iban", "ref", "person", "address"),
            ("en", "de", "es"),
        ),
        Kind(
            "person_name",
            "person name in lower or upper case, with initials or a title",
            ("person",),
            ("en",),
        ),
        Kind("address", "street address and town", ("address", "town"), ("en",)),
        *(
            Kind(
                f"lang_{language}",
                f"{language} message: names, addresses, phones in national formats",
                (),
                (language,),
            )
            for language in LANGUAGES
            if language != "en"
        ),
        Kind(
            "negative_lookalike", 'prose with "at", "dot", "point" that is no address', _NEGATIVE_SLOTS, _ALL
        ),
        Kind("negative_numbers", "article numbers failing Luhn, version numbers", _NEGATIVE_SLOTS, _ALL),
        Kind(
            "negative_times_prices",
            "times, prices, quantities, dates that are not birth dates",
            _NEGATIVE_SLOTS,
            _ALL,
        ),
    )
}

#: Slot names in carrier templates.
SLOT_TYPES: tuple[str, ...] = (
    "person",
    "first",
    "email",
    "phone",
    "card",
    "iban",
    "id",
    "ref",
    "ip",
    "url",
    "dob",
    "address",
    "town",
)
#: Filler names in negative templates (a digit may follow: ``{price2}``).
FILLERS: tuple[str, ...] = ("nonluhn", "price", "time", "date", "version", "qty")

_SLOT = re.compile(r"\{([a-z]+)(\d?)\}")

# ---------------------------------------------------------------------------------------------------------
# Language facts (shared by both halves): number words, spelled separators, months, ordinals.

_DIGIT_WORDS: Mapping[str, tuple[str, ...]] = {
    "en": _words("zero one two three four five six seven eight nine"),
    "de": _words("null eins zwei drei vier fünf sechs sieben acht neun"),
    "fr": _words("zéro un deux trois quatre cinq six sept huit neuf"),
    "es": _words("cero uno dos tres cuatro cinco seis siete ocho nueve"),
    "it": _words("zero uno due tre quattro cinque sei sette otto nove"),
    "pt": _words("zero um dois três quatro cinco seis sete oito nove"),
    "nl": _words("nul een twee drie vier vijf zes zeven acht negen"),
}
_PLUS_WORD: Mapping[str, str] = {
    "en": "plus",
    "de": "plus",
    "fr": "plus",
    "es": "más",
    "it": "più",
    "pt": "mais",
    "nl": "plus",
}
_AT_WORDS: Mapping[str, tuple[str, ...]] = {
    "en": ("at",),
    "de": ("at", "ät"),
    "fr": ("arobase", "at"),
    "es": ("arroba",),
    "it": ("chiocciola", "at"),
    "pt": ("arroba",),
    "nl": ("apenstaartje", "at"),
}
_DOT_WORDS: Mapping[str, tuple[str, ...]] = {
    "en": ("dot",),
    "de": ("punkt",),
    "fr": ("point",),
    "es": ("punto",),
    "it": ("punto",),
    "pt": ("ponto",),
    "nl": ("punt",),
}
_MONTHS: Mapping[str, tuple[str, ...]] = {
    "en": _words("January February March April May June July August September October November December"),
    "de": _words("Januar Februar März April Mai Juni Juli August September Oktober November Dezember"),
    "fr": _words("janvier février mars avril mai juin juillet août septembre octobre novembre décembre"),
    "es": _words("enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre"),
    "it": _words(
        "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre"
    ),
    "pt": _words("janeiro fevereiro março abril maio junho julho agosto setembro outubro novembro dezembro"),
    "nl": _words("januari februari maart april mei juni juli augustus september oktober november december"),
}
#: Day numbers 1-12 as words, in the form a birth date takes after the template's cue ("born on the ...",
#: "geboren am ...", "né le ...").
_DAY_WORDS: Mapping[str, tuple[str, ...]] = {
    "en": _words("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth"),
    "de": _words(
        "ersten zweiten dritten vierten fünften sechsten siebten achten neunten zehnten elften zwölften"
    ),
    "fr": _words("premier deux trois quatre cinq six sept huit neuf dix onze douze"),
    "es": _words("uno dos tres cuatro cinco seis siete ocho nueve diez once doce"),
    "it": _words("primo due tre quattro cinque sei sette otto nove dieci undici dodici"),
    "pt": _words("primeiro dois três quatro cinco seis sete oito nove dez onze doze"),
    "nl": _words("een twee drie vier vijf zes zeven acht negen tien elf twaalf"),
}
_EN_SUFFIX = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}
_EN_TENS = {
    2: "twenty",
    3: "thirty",
    4: "forty",
    5: "fifty",
    6: "sixty",
    7: "seventy",
    8: "eighty",
    9: "ninety",
}
_PHONE_REGIONS: Mapping[str, tuple[str, ...]] = {
    "en": ("US", "GB"),
    "de": ("DE",),
    "fr": ("FR",),
    "es": ("ES",),
    "it": ("IT",),
    "pt": ("PT",),
    "nl": ("NL",),
}
_IBAN_LOCALES: Mapping[str, str] = {
    "en": "en_GB",
    "de": "de_DE",
    "fr": "fr_FR",
    "es": "es_ES",
    "it": "it_IT",
    "pt": "pt_PT",
    "nl": "nl_NL",
}
#: Labels of references written the ordinary way (the loose ones are styles of a half).
_PLAIN_LABELS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "en": {
        "CUSTOMER_ID": ("customer number", "customer ID"),
        "ACCOUNT_ID": ("account number",),
        "ORDER_ID": ("order number", "order"),
        "TICKET_ID": ("ticket", "case"),
    },
    "de": {
        "CUSTOMER_ID": ("Kundennummer",),
        "ACCOUNT_ID": ("Kundenkonto",),
        "ORDER_ID": ("Bestellnummer", "Bestellung"),
        "TICKET_ID": ("Ticket", "Vorgang"),
    },
    "fr": {
        "CUSTOMER_ID": ("numéro client",),
        "ACCOUNT_ID": ("compte client",),
        "ORDER_ID": ("commande", "numéro de commande"),
        "TICKET_ID": ("ticket", "dossier"),
    },
    "es": {
        "CUSTOMER_ID": ("número de cliente",),
        "ACCOUNT_ID": ("cuenta de cliente",),
        "ORDER_ID": ("pedido", "número de pedido"),
        "TICKET_ID": ("incidencia", "ticket"),
    },
    "it": {
        "CUSTOMER_ID": ("codice cliente",),
        "ACCOUNT_ID": ("conto cliente",),
        "ORDER_ID": ("ordine", "numero d'ordine"),
        "TICKET_ID": ("ticket", "pratica"),
    },
    "pt": {
        "CUSTOMER_ID": ("número de cliente",),
        "ACCOUNT_ID": ("conta de cliente",),
        "ORDER_ID": ("encomenda", "número da encomenda"),
        "TICKET_ID": ("pedido de suporte", "ticket"),
    },
    "nl": {
        "CUSTOMER_ID": ("klantnummer",),
        "ACCOUNT_ID": ("klantaccount",),
        "ORDER_ID": ("bestelling", "bestelnummer"),
        "TICKET_ID": ("ticket", "melding"),
    },
}
_REFERENCE_PREFIX = {"CUSTOMER_ID": "C", "ACCOUNT_ID": "AC", "ORDER_ID": "ORD", "TICKET_ID": "INC"}

# ---------------------------------------------------------------------------------------------------------
# The tuning half.

_TUNING_TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "en": (
        "Hi, it's {person}. Please send the receipt to {email}, not to my work address.",
        "Could somebody call me back on {phone}? I'm free after lunch. {first}",
        "I was charged twice on my card {card}, can you reverse one of the payments?",
        "Please refund the deposit to {iban}. The account holder is {person}.",
        "For the tax form I need to confirm my SSN: {id}.",
        "{ref} - the replacement part never arrived. Regards, {person}",
        "Someone logged into my profile from {ip} last night, that wasn't me!",
        "Your agent sent me this link, is it safe? {url}",
        "The registration form rejects my date of birth, I was born on {dob}.",
        "We moved last month, the new address is {address}.",
        "Hello, my name is {person} and I'd like to close my account. You can reach me at {email}.",
        "My phone number changed to {phone}, please update {ref}.",
        "Dear team, I'm {person}, born on {dob}. I need a copy of my contract.",
        "card {card} - it says declined although the bank says everything is fine",
        "please deliver to {address} instead and text me on {phone}",
        "The SSN you have on file ({id}) is not mine, mine ends differently. - {first}",
        "I can't log in to the portal: {url} just shows an error.",
        "Hey, {first} here. Reach me at {email} if the courier can't find the house in {town}.",
        "Is it possible to pay the outstanding amount from {iban}? Thanks, {person}",
        "Blocked login from {ip}? I was travelling. {ref}",
    ),
    "de": (
        "Hallo, hier ist {person}. Bitte schicken Sie die Rechnung an {email}.",
        "Können Sie mich unter {phone} zurückrufen? Ich bin nachmittags erreichbar.",
        "Die Abbuchung von meiner Karte {card} war doppelt, bitte erstatten Sie einen Betrag.",
        "Bitte überweisen Sie das Geld auf {iban}, Kontoinhaber ist {person}.",
        "Meine Steuer-ID lautet {id}, falls Sie die für das Formular brauchen.",
        "Zu {ref}: Das Paket ist immer noch nicht da. Viele Grüße, {person}",
        "Ich bin am {dob} geboren, im Portal steht aber ein anderes Datum.",
        "Unsere neue Anschrift: {address}. Bitte ändern Sie das im Kundenkonto.",
        "Sehr geehrte Damen und Herren, mein Name ist {person}, erreichbar unter {phone}.",
        "Meine Handynummer hat sich geändert: {phone}. Betrifft {ref}.",
        "Der Link {url} zeigt mir fremde Bestellungen an, bitte prüfen!",
        "Liefern Sie auch nach {town}? Antwort bitte an {email}. Gruß {first}",
        "Heute früh gab es eine Anmeldung von {ip}, das war ich nicht.",
        "Ich heiße {person}, geboren am {dob}, und möchte meinen Vertrag kündigen.",
    ),
    "fr": (
        "Bonjour, c'est {person}. Merci d'envoyer la facture à {email}.",
        "Pouvez-vous me rappeler au {phone} ? Je suis disponible l'après-midi.",
        "Ma carte {card} a été débitée deux fois pour la même commande.",
        "Merci de rembourser sur le compte {iban}, titulaire {person}.",
        "Mon numéro de sécurité sociale est le {id}.",
        "Concernant {ref} : toujours pas de nouvelles. Cordialement, {person}",
        "Je suis né le {dob}, votre site affiche une autre date.",
        "Nous avons déménagé, la nouvelle adresse est {address}.",
        "Madame, Monsieur, je m'appelle {person}, joignable au {phone}.",
        "Mon numéro de portable a changé : {phone}. C'est pour {ref}.",
        "Le lien {url} affiche les commandes d'un autre client !",
        "Livrez-vous à {town} ? Répondez-moi à {email}. {first}",
        "Quelqu'un s'est connecté depuis {ip} cette nuit, ce n'était pas moi.",
        "Je m'appelle {person}, née le {dob}, et je souhaite résilier mon contrat.",
    ),
    "es": (
        "Hola, soy {person}. Por favor, envíen la factura a {email}.",
        "¿Me pueden llamar al {phone}? Estoy disponible por la tarde.",
        "Me han cobrado dos veces en la tarjeta {card}.",
        "Devuelvan el dinero a la cuenta {iban}, titular {person}.",
        "Mi DNI es {id}, por si lo necesitan para el contrato.",
        "Sobre {ref}: el paquete sigue sin llegar. Saludos, {person}",
        "Nací el {dob} y en la web aparece otra fecha.",
        "Nos hemos mudado, la nueva dirección es {address}.",
        "Buenos días, me llamo {person}, mi teléfono es el {phone}.",
        "He cambiado de móvil: {phone}. Es para {ref}.",
        "Me llamo {person}, nací el {dob} y quiero darme de baja.",
        "¿Hacen envíos a {town}? Respondan a {email}. {first}",
    ),
    "it": (
        "Buongiorno, sono {person}. Mandate la fattura a {email}, per favore.",
        "Potete richiamarmi al {phone}? Sono disponibile nel pomeriggio.",
        "Sulla carta {card} mi avete addebitato due volte lo stesso ordine.",
        "Rimborsate sul conto {iban}, intestato a {person}.",
        "Il mio codice fiscale è {id}, se serve per il contratto.",
        "Riguardo {ref}: il pacco non è ancora arrivato. Saluti, {person}",
        "Sono nato il {dob}, ma sul sito compare un'altra data.",
        "Ci siamo trasferiti, il nuovo indirizzo è {address}.",
        "Salve, mi chiamo {person}, il mio numero è {phone}.",
        "Ho cambiato cellulare: {phone}. Riguarda {ref}.",
        "Mi chiamo {person}, sono nata il {dob} e vorrei disdire l'abbonamento.",
        "Spedite anche a {town}? Rispondetemi a {email}. {first}",
    ),
    "pt": (
        "Olá, fala {person}. Enviem a fatura para {email}, por favor.",
        "Podem ligar-me para o {phone}? Estou disponível à tarde.",
        "Cobraram duas vezes no meu cartão {card}.",
        "Devolvam o dinheiro para a conta {iban}, titular {person}.",
        "O meu NIF é {id}, caso precisem para a fatura.",
        "Sobre {ref}: a encomenda ainda não chegou. Cumprimentos, {person}",
        "Nasci a {dob} e no site aparece outra data.",
        "Mudámos de casa, a nova morada é {address}.",
        "Bom dia, chamo-me {person}, o meu telefone é o {phone}.",
        "Mudei de telemóvel: {phone}. É sobre {ref}.",
        "Chamo-me {person}, nasci a {dob} e quero cancelar o contrato.",
        "Entregam em {town}? Respondam para {email}. {first}",
    ),
    "nl": (
        "Hallo, met {person}. Stuur de factuur alstublieft naar {email}.",
        "Kunt u mij terugbellen op {phone}? Ik ben 's middags bereikbaar.",
        "Er is twee keer afgeschreven van mijn creditcard {card}.",
        "Graag het geld terugstorten op {iban}, ten name van {person}.",
        "Mijn BSN is {id}, voor het geval u dat nodig heeft.",
        "Over {ref}: het pakket is nog steeds niet bezorgd. Groet, {person}",
        "Ik ben geboren op {dob}, maar op de site staat een andere datum.",
        "We zijn verhuisd, het nieuwe adres is {address}.",
        "Goedemorgen, mijn naam is {person}, mijn telefoonnummer is {phone}.",
        "Mijn mobiele nummer is veranderd: {phone}. Het gaat om {ref}.",
        "Ik heet {person}, geboren op {dob}, en ik wil mijn abonnement opzeggen.",
        "Bezorgen jullie ook in {town}? Antwoord graag naar {email}. {first}",
    ),
}

_TUNING_NEGATIVES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "negative_lookalike": {
        "en": (
            "Are you coming to the dot com bubble talk at noon?",
            "I'm at home today, at work tomorrow, and at the dot matrix printer museum on Friday.",
            "Looking at my inbox, dot dot dot, still nothing from you.",
        ),
        "de": ("Wir treffen uns beim Vortrag über die Dotcom-Blase, Punkt zehn am Haupteingang.",),
        "fr": ("Rendez-vous au point info pour la conférence sur la bulle point com.",),
        "es": ("Quedamos en el punto de encuentro para la charla sobre la burbuja punto com.",),
        "it": ("Ci vediamo al punto d'incontro per il seminario sulla bolla delle dot com.",),
        "pt": ("Encontramo-nos no ponto de encontro para a palestra sobre a bolha ponto com.",),
        "nl": ("We zien elkaar bij het verzamelpunt voor de lezing over de dotcom-zeepbel.",),
    },
    "negative_numbers": {
        "en": (
            "The part number on the box is {nonluhn}, is that the right model?",
            "Firmware {version} did not fix the issue with article {nonluhn}.",
        ),
        "de": (
            "Die Artikelnummer {nonluhn} passt nicht zu meinem Gerät.",
            "Seit Version {version} geht nichts mehr.",
        ),
        "fr": ("La référence article {nonluhn} ne correspond pas à mon appareil.",),
        "es": ("La referencia del artículo {nonluhn} no coincide con mi aparato.",),
        "it": ("Il codice articolo {nonluhn} non corrisponde al mio apparecchio.",),
        "pt": ("A referência do artigo {nonluhn} não corresponde ao meu aparelho.",),
        "nl": ("Het artikelnummer {nonluhn} past niet bij mijn apparaat.",),
    },
    "negative_times_prices": {
        "en": (
            "The delivery window is {time} to {time2}, and the fee was {price}.",
            "It arrived on {date}, two days late, and cost {price}.",
            "Your shop closes at {time} but the website says otherwise.",
        ),
        "de": (
            "Lieferung zwischen {time} und {time2} Uhr, Preis {price}.",
            "Die Bestellung kam am {date} an.",
        ),
        "fr": ("Livraison entre {time} et {time2}, pour {price}.", "Le colis est arrivé le {date}."),
        "es": ("Entrega entre las {time} y las {time2}, por {price}.", "El paquete llegó el {date}."),
        "it": (
            "Consegna tra le {time} e le {time2}, al prezzo di {price}.",
            "Il pacco è arrivato il {date}.",
        ),
        "pt": ("Entrega entre as {time} e as {time2}, por {price}.", "A encomenda chegou a {date}."),
        "nl": ("Bezorging tussen {time} en {time2}, voor {price}.", "Het pakket kwam op {date} aan."),
    },
}

_TUNING_NAMES: Mapping[str, NameBook] = {
    "en": NameBook(
        first=_words(
            "Thaddeus Percival Evander Barnaby Ignatius Peregrine Lysander Obadiah Mirabel "
            "Clementine Perpetua Araminta Cordelia Millicent Tamsin"
        ),
        last=_words(
            "Bramwell Ashworth Pemberton Quimby Fairweather Thistlewood Blakemore "
            "Winterbottom Featherstone Grimsditch Oakenshaw Puddifoot Throckmorton "
            "Applethwaite Birkinshaw"
        ),
        streets=_phrases(
            "Larkspur Close | Bramble Lane | Quarry Hill Road | Tanners Row | Ferncliffe"
            " Drive | Old Mill Court | Whitethorn Avenue | Kingfisher Way"
        ),
        towns=_towns("Harrogate | Keswick | Tiverton | Hexham | Ludlow | Kendal"),
    ),
    "de": NameBook(
        first=_words(
            "Liutgard Reinmar Gismund Hadumar Wunibald Hiltraut Leberecht Radegund Amalrich Hildebrand"
        ),
        last=_words(
            "Ostermeier Quandtmann Wolkenhauer Zwirnlein Hasenkamp Brunnhuber Dörrenbächer "
            "Eichhorst Feuerstake Grünwaldner Hollerbusch Immenkötter"
        ),
        streets=_phrases(
            "Lindenhofweg | Am Kirschgarten | Mühlbachstraße | Eichendorffring | Hohe "
            "Gasse | Zum Sonnenhang | Fasanenweg | Brunnenstraße"
        ),
        towns=_towns(
            "Bamberg 960 | Lüneburg 213 | Heilbronn 740 | Göttingen 370 | Passau 940 | Schwerin 190"
        ),
    ),
    "fr": NameBook(
        first=_words(
            "Aurèle Anselme Gaspard Solange Ghislaine Clothilde Eudes Amaury Baptistine "
            "Célestin Domitille Euphrasie"
        ),
        last=_words(
            "Vauquelin Chaptal Dutronc Verlaine Pécuchet Brassens Montcalm Lafargue Queffélec"
            " Abgrall Bourdonnec Champollion"
        ),
        streets=_phrases(
            "rue des Tanneurs | allée des Tilleuls | chemin du Moulin | rue de la "
            "Fontaine | impasse des Lilas | avenue des Acacias"
        ),
        towns=_towns("Angers 491 | Besançon 250 | Quimper 290 | Colmar 680 | Périgueux 240 | Annecy 740"),
    ),
    "es": NameBook(
        first=_words(
            "Casimiro Gumersindo Pancracio Quiteria Wenceslao Zoilo Fermina Ludivina Nazaria Dámaso"
        ),
        last=_words(
            "Garciliaso Urquidi Zubizarreta Olazábal Peñalosa Aguirrezábal Barrenechea "
            "Cachafeiro Doñabeitia Echenique Fuenmayor Hormaechea"
        ),
        streets=_phrases(
            "Calle del Olivo | Avenida de los Almendros | Calle Mayor | Paseo de la "
            "Alameda | Calle de la Fuente | Plaza del Mercado"
        ),
        towns=_towns("Salamanca 370 | Cáceres 100 | Logroño 260 | Teruel 440 | Lugo 270 | Huesca 220"),
    ),
    "it": NameBook(
        first=_words(
            "Gualtiero Ginevra Settimio Fiorenza Adalgisa Ippolito Liberata Nazzareno Orsola"
            " Prospero Amilcare"
        ),
        last=_words(
            "Zanardelli Quaglia Scapinelli Lagomarsino Colonnetti Abbondanza Boccadifuoco "
            "Carbonaro Fumagalli Garibaldini Lanzavecchia Ottolenghi"
        ),
        streets=_phrases(
            "Via delle Rose | Vicolo del Pozzo | Via dei Tigli | Piazza del Mercato | "
            "Via della Fontana | Viale dei Pini"
        ),
        towns=_towns("Ferrara 441 | Lucca 551 | Perugia 061 | Mantova 461 | Lecce 731 | Trento 381"),
    ),
    "pt": NameBook(
        first=_words(
            "Brites Lucrécia Ifigénia Olímpia Policarpo Quitéria Teodolinda Urraca Zulmira "
            "Adelino Belmira Custódio Deolinda Eleutério"
        ),
        last=_words(
            "Quaresma Saramago Sarmento Camões Pessanha Trigueiros Abrunhosa Bettencourt "
            "Cerqueira Damasceno Espinheira Gouveia"
        ),
        streets=_phrases(
            "Rua das Flores | Travessa do Moinho | Rua do Sol | Largo da Fonte | Rua dos"
            " Pescadores | Avenida das Tílias"
        ),
        towns=_towns("Braga 4700 | Coimbra 3000 | Aveiro 3800 | Évora 7000 | Viseu 3500 | Faro 8000"),
    ),
    "nl": NameBook(
        first=_words(
            "Joukje Wiebe Hylke Aagje Tjitske Douwe Baukje Dirkje Eelco Fokke Geertje Hessel"
            " Ietje Klaasje Lieuwe Marrit"
        ),
        last=_words(
            "Terpstra Brouwershaven Zijlstra Oosterhuis Wierenga Ruijsdael Kuipersma "
            "Grootveld Achterberg Dijkgraaf Eikelboom Fokkema Gravendijk Hogenkamp"
        ),
        streets=_phrases("Lindelaan | Molenstraat | Kerkpad | Dorpsstraat | Beukenhof | Zeeweg"),
        towns=_towns(
            "Zwolle 801 | Leeuwarden 891 | Deventer 741 | Amersfoort 381 | Middelburg 433 | Assen 940"
        ),
    ),
}

_TUNING_STYLES = Styles(
    brackets=(("[", "]", False), ("(", ")", False), ("{", "}", False), (" [", "] ", False)),
    phone_separators=(".", "/", "", " / ", "  ", "-", " . "),
    card_separators=(".", " ", "", "  ", " - ", "/"),
    loose_labels={
        "en": {
            "CUSTOMER_ID": ("cust#", "cust no", "customer nr."),
            "ACCOUNT_ID": ("acct:", "acc. no"),
            "ORDER_ID": ("ord#", "order no:", "Order-Nr"),
            "TICKET_ID": ("tkt", "case #", "ref:"),
        },
        "de": {
            "CUSTOMER_ID": ("Kd.-Nr.", "KdNr"),
            "ACCOUNT_ID": ("Konto-Nr. (Kunde)", "Kto"),
            "ORDER_ID": ("Best.-Nr.", "Bestellnr"),
            "TICKET_ID": ("Vorgang#", "Ticket-Nr"),
        },
        "fr": {
            "CUSTOMER_ID": ("n° client", "réf. client"),
            "ACCOUNT_ID": ("cpte client",),
            "ORDER_ID": ("cde n°", "N°cmd"),
            "TICKET_ID": ("dossier n°", "tkt"),
        },
        "es": {
            "CUSTOMER_ID": ("nº cliente", "n.º de cliente"),
            "ACCOUNT_ID": ("cta. cliente",),
            "ORDER_ID": ("n.º pedido", "ref. pedido"),
            "TICKET_ID": ("incid. #", "tkt"),
        },
        "it": {
            "CUSTOMER_ID": ("cod. cliente", "cod.cli."),
            "ACCOUNT_ID": ("c/c cliente",),
            "ORDER_ID": ("n. ordine", "nr ordine"),
            "TICKET_ID": ("pratica n.", "tkt"),
        },
        "pt": {
            "CUSTOMER_ID": ("nº cliente", "n.º cliente"),
            "ACCOUNT_ID": ("cta cliente",),
            "ORDER_ID": ("n.º encomenda", "ref. encomenda"),
            "TICKET_ID": ("pedido nº", "tkt"),
        },
        "nl": {
            "CUSTOMER_ID": ("klantnr.", "klant-nr"),
            "ACCOUNT_ID": ("acc.nr",),
            "ORDER_ID": ("bestelnr", "best.nr."),
            "TICKET_ID": ("ticket#", "meldingnr"),
        },
    },
    email_domains={
        "en": ("gmail.com", "outlook.com", "yahoo.co.uk", "icloud.com"),
        "de": ("web.de", "gmx.de", "t-online.de", "posteo.de"),
        "fr": ("orange.fr", "free.fr", "laposte.net", "sfr.fr"),
        "es": ("telefonica.es", "hotmail.es", "yahoo.es"),
        "it": ("libero.it", "virgilio.it", "tiscali.it"),
        "pt": ("sapo.pt", "clix.pt", "gmail.com"),
        "nl": ("ziggo.nl", "kpnmail.nl", "xs4all.nl"),
    },
    foreign_domains=("orange.fr", "web.de", "gmx.de", "free.fr", "libero.it", "ziggo.nl", "sapo.pt"),
    url_shapes=(
        "https://{host}/customer/{CUSTOMER_ID}?email={EMAIL_ADDRESS}",
        "https://{host}/orders/{ORDER_ID}",
        "http://{host}/account?id={ACCOUNT_ID}&user={EMAIL_ADDRESS}",
        "https://{host}/tickets/{TICKET_ID}/view",
    ),
    url_hosts=("crm.example.com", "shop.example.org", "portal.example.net", "kundenportal.example.de"),
)

TUNING = Half(
    name="tuning",
    seed=20240611,
    templates=_TUNING_TEMPLATES,
    negatives=_TUNING_NEGATIVES,
    names=_TUNING_NAMES,
    styles=_TUNING_STYLES,
)

# ---------------------------------------------------------------------------------------------------------
# The held-out half: its own templates, seed, names, places and styles. Only the benchmark reads it.

_HELDOUT_TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "en": (
        "Good afternoon, {person} speaking. My e-mail for the invoices is {email}.",
        "Text me at {phone} when the technician is on his way, please.",
        "The payment with {card} failed three times today. What is going on?",
        "Kindly transfer the refund to my bank account {iban} ({person}).",
        "Social security number {id}, as requested by your colleague.",
        "Following up on {ref}: still no answer after two weeks. {first}",
        "Got a security alert for a sign-in from {ip}. Not me. Please lock it.",
        "This is the page I was sent to: {url} - it shows someone else's data??",
        "My birthday is wrong in your system, I was born on {dob}.",
        "Kindly update my address to {address}, effective immediately.",
        "To whom it may concern, I am {person}. Write to {email} and I'll answer today.",
        "New mobile: {phone}. Keep everything else on {ref} as it is.",
        "I'm {person}, born on {dob}, so I'm entitled to the senior discount, aren't I?",
        "Here is the full card number you asked for: {card}",
        "Parcel should go to {address}; if nobody opens, ring {phone}.",
        "My SSN is {id} - please don't share it with anyone.",
        "Your newsletter link {url} opens my account without a password!",
        "{first} again. Does the courier deliver to {town} on Saturdays? Mail me: {email}",
        "Direct debit from {iban} please, starting next month. {person}",
        "Session from {ip} kicked me out. Ref {ref}.",
    ),
    "de": (
        "Guten Tag, {person} am Apparat. Meine E-Mail-Adresse ist {email}.",
        "Rufen Sie bitte unter {phone} an, wenn der Techniker kommt.",
        "Mit der Kreditkarte {card} klappt die Zahlung nicht. Woran liegt das?",
        "Die Erstattung bitte auf mein Konto {iban} (Inhaber: {person}).",
        "Hier wie gewünscht meine Steuer-Identifikationsnummer: {id}",
        "Ich warte seit zwei Wochen auf eine Antwort zu {ref}. {first}",
        "Mein Geburtsdatum ist falsch gespeichert, ich bin am {dob} geboren.",
        "Bitte die Lieferadresse auf {address} ändern.",
        "Mein Name ist {person}, Sie erreichen mich tagsüber unter {phone}.",
        "Neue Festnetznummer: {phone}, bitte bei {ref} hinterlegen.",
        "Über {url} kann jeder meine Daten sehen, das geht so nicht.",
        "Wohne jetzt in {town}. Schreiben Sie mir an {email}. {first}",
        "Mein Konto wurde von {ip} aus gesperrt, was ist da los?",
        "{person}, geboren am {dob}, bittet um Auskunft über die gespeicherten Daten.",
    ),
    "fr": (
        "Bonsoir, ici {person}. Mon adresse électronique est {email}.",
        "Appelez-moi au {phone} quand le livreur arrive, s'il vous plaît.",
        "Le paiement avec la carte {card} est refusé sans raison.",
        "Le remboursement sur mon IBAN {iban} svp (au nom de {person}).",
        "Voici mon numéro de sécurité sociale comme demandé : {id}",
        "J'attends depuis deux semaines une réponse pour {ref}. {first}",
        "Ma date de naissance est fausse, je suis née le {dob}.",
        "Merci de modifier l'adresse de livraison : {address}.",
        "Je suis {person}, vous pouvez me joindre au {phone} en journée.",
        "Nouveau numéro fixe : {phone}, à mettre sur {ref}.",
        "Via {url} n'importe qui voit mes données personnelles.",
        "J'habite maintenant à {town}. Écrivez-moi à {email}. {first}",
        "Mon compte a été bloqué après une connexion depuis {ip}.",
        "{person}, né le {dob}, demande l'accès à ses données.",
    ),
    "es": (
        "Buenas tardes, les escribe {person}. Mi correo es {email}.",
        "Llámenme al {phone} cuando salga el repartidor, gracias.",
        "El pago con la tarjeta {card} me da error todo el rato.",
        "El reembolso a mi IBAN {iban}, por favor (a nombre de {person}).",
        "Aquí tienen mi DNI, tal como me pidieron: {id}",
        "Llevo dos semanas esperando respuesta sobre {ref}. {first}",
        "Mi fecha de nacimiento está mal, nací el {dob}.",
        "Cambien la dirección de entrega a {address}, por favor.",
        "Soy {person}, pueden localizarme en el {phone} por las mañanas.",
        "Nuevo teléfono fijo: {phone}, anótenlo en {ref}.",
        "Ahora vivo en {town}. Escríbanme a {email}. {first}",
        "{person}, nacida el {dob}, solicita acceso a sus datos.",
    ),
    "it": (
        "Buonasera, vi scrive {person}. La mia email è {email}.",
        "Chiamatemi al {phone} quando parte il corriere, grazie.",
        "Il pagamento con la carta {card} viene sempre rifiutato.",
        "Il rimborso sul mio IBAN {iban}, per cortesia (intestato a {person}).",
        "Ecco il mio codice fiscale come richiesto: {id}",
        "Aspetto da due settimane una risposta su {ref}. {first}",
        "La mia data di nascita è sbagliata, sono nata il {dob}.",
        "Cambiate l'indirizzo di consegna in {address}, per favore.",
        "Sono {person}, potete trovarmi al {phone} di mattina.",
        "Nuovo numero fisso: {phone}, da aggiungere a {ref}.",
        "Adesso abito a {town}. Scrivetemi a {email}. {first}",
        "{person}, nato il {dob}, chiede l'accesso ai propri dati.",
    ),
    "pt": (
        "Boa tarde, escreve {person}. O meu e-mail é {email}.",
        "Liguem para o {phone} quando o estafeta sair, obrigado.",
        "O pagamento com o cartão {card} dá sempre erro.",
        "O reembolso para o meu IBAN {iban}, por favor (em nome de {person}).",
        "Aqui está o meu NIF, como pediram: {id}",
        "Há duas semanas que espero resposta sobre {ref}. {first}",
        "A minha data de nascimento está errada, nasci a {dob}.",
        "Alterem a morada de entrega para {address}, por favor.",
        "Sou {person}, podem contactar-me pelo {phone} de manhã.",
        "Novo telefone fixo: {phone}, acrescentem a {ref}.",
        "Agora moro em {town}. Escrevam-me para {email}. {first}",
        "{person}, nascida a {dob}, pede acesso aos seus dados.",
    ),
    "nl": (
        "Goedemiddag, u spreekt met {person}. Mijn e-mailadres is {email}.",
        "Bel mij op {phone} als de monteur onderweg is, graag.",
        "Betalen met de creditcard {card} lukt steeds niet.",
        "De terugbetaling graag op mijn rekening {iban} (t.n.v. {person}).",
        "Hierbij mijn burgerservicenummer zoals gevraagd: {id}",
        "Ik wacht al twee weken op antwoord over {ref}. {first}",
        "Mijn geboortedatum klopt niet, ik ben geboren op {dob}.",
        "Wijzig het bezorgadres alstublieft in {address}.",
        "Ik ben {person}, overdag bereikbaar op {phone}.",
        "Nieuw vast nummer: {phone}, graag toevoegen aan {ref}.",
        "Ik woon nu in {town}. Mail mij op {email}. {first}",
        "{person}, geboren op {dob}, vraagt inzage in de opgeslagen gegevens.",
    ),
}

_HELDOUT_NEGATIVES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "negative_lookalike": {
        "en": (
            "We watched a documentary about the dot com era at the cinema.",
            "Tap at the dot on the screen and the menu opens.",
            "She works at a dot com start-up now, at least that's what she told us at dinner.",
        ),
        "de": ("Mein Sohn schreibt ein Referat über die Dotcom-Ära, Punkt für Punkt.",),
        "fr": ("Mon fils fait un exposé sur l'époque des start-up point com, point final.",),
        "es": ("Mi hija prepara un trabajo sobre la era de las punto com, y punto.",),
        "it": ("Mio figlio fa una ricerca sull'epoca delle dot com, punto e basta.",),
        "pt": ("A minha filha faz um trabalho sobre a era das ponto com, ponto final.",),
        "nl": ("Mijn dochter maakt een werkstuk over het dotcom-tijdperk, punt uit.",),
    },
    "negative_numbers": {
        "en": (
            "The catalogue lists it under item {nonluhn} for {price}.",
            "Version {version} of the app crashes on start.",
        ),
        "de": (
            "Auf dem Karton steht die EAN {nonluhn}, ist das das richtige Modell?",
            "App-Version {version} stürzt beim Start ab.",
        ),
        "fr": ("Sur le carton il y a le code EAN {nonluhn}, est-ce le bon modèle ?",),
        "es": ("En la caja pone el código EAN {nonluhn}, ¿es el modelo correcto?",),
        "it": ("Sulla scatola c'è il codice EAN {nonluhn}, è il modello giusto?",),
        "pt": ("Na caixa está o código EAN {nonluhn}, é o modelo certo?",),
        "nl": ("Op de doos staat EAN-code {nonluhn}, is dat het juiste model?",),
    },
    "negative_times_prices": {
        "en": (
            "Open from {time} until {time2}? I'll come by with {qty} returns.",
            "Prices went from {price} to {price2} overnight.",
            "The order was placed on {date} at {time}.",
        ),
        "de": (
            "Sie haben bis {time} Uhr geöffnet? Ich bringe {qty} Rücksendungen.",
            "Der Preis ist über Nacht von {price} auf {price2} gestiegen.",
        ),
        "fr": (
            "Vous êtes ouverts jusqu'à {time} ? Je passe avec {qty} retours.",
            "Le prix est passé de {price} à {price2} en une nuit.",
        ),
        "es": (
            "¿Abren hasta las {time}? Llevo {qty} devoluciones.",
            "El precio pasó de {price} a {price2} de un día para otro.",
        ),
        "it": (
            "Siete aperti fino alle {time}? Porto {qty} resi.",
            "Il prezzo è passato da {price} a {price2} in una notte.",
        ),
        "pt": (
            "Estão abertos até às {time}? Levo {qty} devoluções.",
            "O preço passou de {price} para {price2} de um dia para o outro.",
        ),
        "nl": (
            "Zijn jullie open tot {time}? Ik kom met {qty} retouren.",
            "De prijs ging van {price} naar {price2} in één nacht.",
        ),
    },
}

_HELDOUT_NAMES: Mapping[str, NameBook] = {
    "en": NameBook(
        first=_words(
            "Ambrose Cuthbert Hezekiah Algernon Horatio Cosmo Caspian Tobiah Rosalind "
            "Winifred Zinnia Marigold Juniper Saffron"
        ),
        last=_words(
            "Hawthorne Cholmondeley Sidebottom Wedgwood Cragside Dunnington Entwhistle "
            "Fothergill Gisburne Honeysett Inglethorpe Kettlewell Lightbody Merriweather "
            "Nettleford"
        ),
        streets=_phrases(
            "Heather Bank | Ropewalk Street | Cobblestone Mews | Windmill Rise | Orchard"
            " Terrace | Saltmarsh Road | Beacon View | Foxglove Crescent"
        ),
        towns=_towns("Whitby | Morpeth | Totnes | Buxton | Alnwick | Ripon"),
    ),
    "de": NameBook(
        first=_words(
            "Gotthelf Ingomar Friedebert Irmgardis Heilwig Swanhild Wilgard Dankwart Gunthram Isfried Lutwin"
        ),
        last=_words(
            "Jungbluth Kräuterlein Lindenschmidt Mühlenhoff Nesselrath Oberndörfer "
            "Pfeifenberger Quellmalz Rosenkötter Schwalbenbach Uhlenbrock Wiesenthaler"
        ),
        streets=_phrases(
            "Ahornallee | Im Wiesengrund | Schmiedegasse | Kastanienweg | Am Mühlenteich"
            " | Rosenhöhe | Talstraße | Uferpromenade"
        ),
        towns=_towns("Bayreuth 954 | Celle 292 | Konstanz 784 | Detmold 327 | Landshut 840 | Wismar 239"),
    ),
    "fr": NameBook(
        first=_words(
            "Foulques Gonzague Hyacinthe Isaure Jehan Ludivine Narcisse Ombeline Philibert "
            "Quitterie Tiphaine Wandrille"
        ),
        last=_words(
            "Desmoulières Escoffier Fouquereau Grandjouan Hautecloque Jambonneau Kerautret "
            "Nogaret Oudinot Quéméneur Tourterelle Vaudremont"
        ),
        streets=_phrases(
            "rue du Four | boulevard des Platanes | place de la Halle | chemin des "
            "Vignes | rue des Jardins | quai des Mariniers"
        ),
        towns=_towns("Poitiers 860 | Chambéry 730 | Vannes 560 | Auxerre 890 | Niort 790 | Albi 810"),
    ),
    "es": NameBook(
        first=_words(
            "Melquíades Onésimo Patrocinio Sinforosa Tranquilino Gaudencio Lucrecio Nemesio "
            "Restituto Petronila Virtudes"
        ),
        last=_words(
            "Irigoyen Larrinaga Navascués Oyarzábal Pagazaurtundúa Retuerta Sagastizábal "
            "Tellechea Urrutikoetxea Aldecoa Bengoechea Casariego"
        ),
        streets=_phrases(
            "Calle de los Herreros | Avenida del Puerto | Calle Real | Paseo del Río | "
            "Calle de las Huertas | Ronda de la Muralla"
        ),
        towns=_towns("Segovia 400 | Zamora 490 | Soria 420 | Ourense 320 | Jaén 230 | Cuenca 160"),
    ),
    "it": NameBook(
        first=_words(
            "Romilda Serafino Tullia Zaccaria Benedetta Crescenzo Egidio Filiberto "
            "Guendalina Ildebrando Brunetto Zelinda"
        ),
        last=_words(
            "Nobiluomo Pellegrinetti Quattrocchi Rapisarda Scognamiglio Tagliaferri Ughetti "
            "Vallisneri Zampagnone Arcangeli Diotallevi Frangipane"
        ),
        streets=_phrases(
            "Via del Forno | Vicolo dei Fabbri | Via delle Vigne | Piazza della Loggia |"
            " Via dei Mulini | Viale dei Castagni"
        ),
        towns=_towns("Ravenna 481 | Siena 531 | Udine 331 | Matera 751 | Bergamo 241 | Pavia 271"),
    ),
    "pt": NameBook(
        first=_words(
            "Felisberta Gaudêncio Herculano Idalina Juvenal Laurinda Marcolino Nazaré "
            "Perpétua Querubim Serafim Ulisses"
        ),
        last=_words(
            "Homem-Cristo Junqueiro Lacerda Magarreiro Orvalho Queirós Rebelo Salgueiro "
            "Taveira Valadares Vilaverde Zagalo"
        ),
        streets=_phrases(
            "Rua da Alegria | Travessa das Oliveiras | Rua do Carmo | Largo do "
            "Pelourinho | Rua dos Ferreiros | Avenida dos Plátanos"
        ),
        towns=_towns("Guimarães 4800 | Leiria 2400 | Setúbal 2900 | Tomar 2300 | Bragança 5300 | Lagos 8600"),
    ),
    "nl": NameBook(
        first=_words(
            "Sietske Tjeerd Uilke Wopke Ynze Aukje Doetje Freerk Gerbrich Harmke Idske Jildou Lolkje Minke"
        ),
        last=_words(
            "IJzerman Jongeneel Kooistra Lammertsma Meulenbelt Nieuwenhuizen Oudshoorn "
            "Roelofsen Schuttevaer Tichelaar Uittenbogaard Vlietstra Waterdrinker Zwaanswijk"
        ),
        streets=_phrases("Eikenlaan | Sluiskade | Bakkersteeg | Wilgenhof | Havenweg | Meidoornstraat"),
        towns=_towns("Alkmaar 181 | Haarlem 201 | Venlo 591 | Hoorn 162 | Gouda 280 | Zutphen 720"),
    ),
}

_HELDOUT_STYLES = Styles(
    brackets=(
        ("<", ">", False),
        ("(", ")", True),
        ("[", "]", True),
        (" -", "- ", False),
        ("[ ", " ]", False),
        ("(", ")", False),
    ),
    phone_separators=("/", ".", "", " . ", " ", "_", " -- "),
    card_separators=(" ", ".", "", " . ", "-", "   "),
    loose_labels={
        "en": {
            "CUSTOMER_ID": ("client no", "cust. ref"),
            "ACCOUNT_ID": ("acc#", "account nr"),
            "ORDER_ID": ("order ref", "PO#"),
            "TICKET_ID": ("incident", "tkt no."),
        },
        "de": {
            "CUSTOMER_ID": ("Kundennr.", "Kunden-Nr"),
            "ACCOUNT_ID": ("Kundenkto.",),
            "ORDER_ID": ("Bestell-Nr.", "Auftragsnr."),
            "TICKET_ID": ("Vorgangsnr.", "Fall-Nr."),
        },
        "fr": {
            "CUSTOMER_ID": ("N° de client", "client n°"),
            "ACCOUNT_ID": ("compte n°",),
            "ORDER_ID": ("commande n°", "réf. cde"),
            "TICKET_ID": ("ticket n°", "incident"),
        },
        "es": {
            "CUSTOMER_ID": ("cliente nº", "n.cliente"),
            "ACCOUNT_ID": ("cuenta nº",),
            "ORDER_ID": ("pedido nº", "n.pedido"),
            "TICKET_ID": ("caso nº", "ticket #"),
        },
        "it": {
            "CUSTOMER_ID": ("cliente n.", "codcliente"),
            "ACCOUNT_ID": ("conto n.",),
            "ORDER_ID": ("ordine n°", "ord."),
            "TICKET_ID": ("segnalazione n.", "ticket #"),
        },
        "pt": {
            "CUSTOMER_ID": ("cliente nº", "n. cliente"),
            "ACCOUNT_ID": ("conta nº",),
            "ORDER_ID": ("encomenda nº", "enc."),
            "TICKET_ID": ("processo nº", "ticket #"),
        },
        "nl": {
            "CUSTOMER_ID": ("klant nr", "klantnr:"),
            "ACCOUNT_ID": ("accountnr.",),
            "ORDER_ID": ("order nr", "bestelling#"),
            "TICKET_ID": ("melding nr.", "zaaknr"),
        },
    },
    email_domains={
        "en": ("hotmail.com", "protonmail.com", "aol.com", "btinternet.com"),
        "de": ("gmx.net", "freenet.de", "arcor.de", "mail.de"),
        "fr": ("wanadoo.fr", "neuf.fr", "bbox.fr", "club-internet.fr"),
        "es": ("terra.es", "ono.com", "movistar.es"),
        "it": ("alice.it", "fastwebnet.it", "inwind.it"),
        "pt": ("netcabo.pt", "iol.pt", "portugalmail.pt"),
        "nl": ("hetnet.nl", "planet.nl", "home.nl"),
    },
    foreign_domains=("wanadoo.fr", "gmx.net", "freenet.de", "alice.it", "terra.es", "planet.nl", "iol.pt"),
    url_shapes=(
        "https://{host}/c/{CUSTOMER_ID}/profile",
        "https://{host}/track?order={ORDER_ID}&mail={EMAIL_ADDRESS}",
        "https://{host}/u/{EMAIL_ADDRESS}/settings",
        "https://{host}/support/case/{TICKET_ID}?contact={PERSON}",
        "http://{host}/billing/{ACCOUNT_ID}",
    ),
    url_hosts=("support.example.com", "my.example.io", "tickets.example.net", "service.example.eu"),
)

HELDOUT = Half(
    name="heldout",
    seed=93151787,
    templates=_HELDOUT_TEMPLATES,
    negatives=_HELDOUT_NEGATIVES,
    names=_HELDOUT_NAMES,
    styles=_HELDOUT_STYLES,
)

HALVES: Mapping[str, Half] = {"tuning": TUNING, "heldout": HELDOUT}

# ---------------------------------------------------------------------------------------------------------
# Values. A slot becomes pieces: (text, gold entity type or None for text around the value).

Piece = tuple[str, str | None]


@dataclass
class _Context:
    """What the value makers of one message share."""

    rng: random.Random
    half: Half
    language: str
    kind: str
    person: tuple[str, str]

    @property
    def book(self) -> NameBook:
        return self.half.names[self.language]

    @property
    def styles(self) -> Styles:
        return self.half.styles

    def person_in(self, language: str) -> tuple[str, str]:
        book = self.half.names[language]
        return self.rng.choice(book.first), self.rng.choice(book.last)


def luhn_check_digit(digits: str) -> str:
    """The Luhn check digit that makes ``digits`` + it a valid card number."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    """Whether the digits of ``number`` pass the Luhn check."""
    digits = re.sub(r"\D", "", number)
    return bool(digits) and luhn_check_digit(digits[:-1]) == digits[-1]


def _random_digits(rng: random.Random, count: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(count))


def _fold(text: str) -> str:
    """ASCII letters of a name for an e-mail local part ("Dörrenbächer" -> "dorrenbacher")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return re.sub(r"[^a-z0-9]", "", "".join(c for c in decomposed if not unicodedata.combining(c)).lower())


def _case(rng: random.Random, text: str) -> str:
    """Unusual letter case (all upper, all lower, swapped or alternating), never the case it had."""
    styles: list[Callable[[str], str]] = [
        str.upper,
        str.lower,
        str.swapcase,
        lambda t: "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(t)),
    ]
    rng.shuffle(styles)
    for style in styles:
        if style(text) != text:
            return style(text)
    return text


def _break(rng: random.Random, text: str) -> str:
    """Break a value by formatting: a zero-width space, a line break or doubled spaces inside it."""
    inner = [i for i in range(1, len(text)) if not text[i - 1].isspace() and not text[i].isspace()]
    style = rng.randrange(3)
    if style == 2 and " " in text.strip():
        return re.sub(" ", lambda _m: " " * rng.choice((2, 3)), text)
    if not inner:
        return text
    cuts = sorted(rng.sample(inner, k=min(len(inner), 1 + rng.randrange(2))), reverse=True)
    mark = "\u200b" if style == 0 else rng.choice(("\n", "\r\n", "-\n"))
    for cut in cuts:
        text = text[:cut] + mark + text[cut:]
    return text


def _email_local(rng: random.Random, first: str, last: str) -> str:
    f, lname = _fold(first), _fold(last)
    return rng.choice(
        (
            f"{f}.{lname}",
            f"{f[0]}.{lname}",
            f"{f}{lname}",
            f"{f}_{lname}",
            f"{lname}.{f}",
            f"{f}.{lname}{rng.randrange(1, 99)}",
            f"{f[0]}{lname}{rng.randrange(1960, 2005)}",
        )
    )


def _email(ctx: _Context, mode: str) -> list[Piece]:
    rng, language = ctx.rng, ctx.language
    first, last = ctx.person if rng.random() < 0.6 else ctx.person_in(language)
    local = _email_local(rng, first, last)
    domains = (
        ctx.styles.foreign_domains if mode == "email_foreign_domain" else ctx.styles.email_domains[language]
    )
    domain = rng.choice(domains)
    if mode == "email_spelled":
        at = rng.choice(_AT_WORDS[language])
        dot = rng.choice(_DOT_WORDS[language])
        if rng.random() < 0.3:
            at, dot = at.upper(), dot.upper()
        gap = rng.choice((" ", " ", "  "))
        spelled_local = local.replace(".", f"{gap}{dot}{gap}") if rng.random() < 0.7 else local
        value = f"{spelled_local}{gap}{at}{gap}{domain.replace('.', f'{gap}{dot}{gap}')}"
    elif mode == "email_bracketed":
        opening, closing, symbol = rng.choice(ctx.styles.brackets)
        at = "@" if symbol else rng.choice(_AT_WORDS[language])
        dot = "." if symbol else rng.choice(_DOT_WORDS[language])
        if not symbol and rng.random() < 0.3:
            at, dot = at.upper(), dot.upper()
        at_part, dot_part = f"{opening}{at}{closing}", f"{opening}{dot}{closing}"
        # Sometimes only the "at" is bracketed and the dots stay dots.
        keep_dots = rng.random() < 0.3
        value = f"{local}{at_part}{domain if keep_dots else domain.replace('.', dot_part)}"
    else:
        value = f"{local}@{domain}"
    return [(value, "EMAIL_ADDRESS")]


def _phone_number(ctx: _Context) -> tuple[str, str, str]:
    """A valid number for the language's region: (country code, national significant number, trunk prefix)."""
    import phonenumbers

    rng = ctx.rng
    region = rng.choice(_PHONE_REGIONS[ctx.language])
    kind = rng.choice((phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE))
    example = phonenumbers.example_number_for_type(region, kind)
    assert example is not None
    national = phonenumbers.national_significant_number(example)
    number = example
    # Keep the example's first three digits (an area or mobile prefix), draw the rest; retry until valid.
    for _ in range(200):
        drawn = national[:3] + _random_digits(rng, len(national) - 3)
        candidate = phonenumbers.parse(f"+{example.country_code}{drawn}", None)
        if phonenumbers.is_valid_number(candidate):
            number = candidate
            break
    significant = phonenumbers.national_significant_number(number)
    dialled = re.sub(r"\D", "", phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    # What a caller dials before the significant number inside the country ("0" in most of Europe).
    trunk = dialled[: len(dialled) - len(significant)] if dialled.endswith(significant) else ""
    return str(number.country_code), significant, trunk


def _national_format(ctx: _Context, country: str, national: str) -> str:
    import phonenumbers

    number = phonenumbers.parse(f"+{country}{national}", None)
    if ctx.rng.random() < 0.35:
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)


def _groups(rng: random.Random, digits: str) -> list[str]:
    """Split digits into groups of 2-4, the way people write numbers down."""
    out: list[str] = []
    index = 0
    while index < len(digits):
        size = rng.choice((2, 3, 3, 4))
        if len(digits) - index - size == 1:
            size += 1
        out.append(digits[index : index + size])
        index += size
    return out


def _phone(ctx: _Context, mode: str) -> list[Piece]:
    rng, language = ctx.rng, ctx.language
    country, national, trunk = _phone_number(ctx)
    international = rng.random() < 0.35
    if mode in ("phone_words", "phone_mixed"):
        words = _DIGIT_WORDS[language]
        digits = (country if international else trunk) + national
        groups = _groups(rng, digits[len(country) :] if international else digits)
        if international:
            groups.insert(0, country)
        joiner = rng.choice((" ", ", ", " - ", "  "))
        rendered = []
        for group_index, group in enumerate(groups):
            as_words = mode == "phone_words" or rng.random() < 0.5 or group_index == len(groups) - 1
            if mode == "phone_mixed" and group_index == 0 and len(groups) > 1:
                as_words = False  # mixed: at least one group stays digits
            if as_words:
                rendered.append(" ".join(words[int(d)] for d in group))
            else:
                rendered.append(group)
        value = joiner.join(rendered)
        if international:
            plus = _PLUS_WORD[language] if mode == "phone_words" else "+"
            value = f"{plus} {value}" if plus != "+" else f"+{value}"
        if mode == "phone_words" and rng.random() < 0.3:
            value = value.upper() if rng.random() < 0.5 else value.capitalize()
        return [(value, "PHONE_NUMBER")]
    if mode == "phone_separators":
        separator = rng.choice(ctx.styles.phone_separators)
        groups = _groups(rng, national if international else trunk + national)
        body = separator.join(groups)
        if international:
            style = rng.randrange(3)
            if style == 0:
                value = f"+{country} {body}"
            elif style == 1:
                value = f"00{country}{separator or ' '}{body}"
            else:
                value = f"+{country} (0) {body}" if trunk else f"+{country}{separator}{body}"
        else:
            value = body
        return [(value, "PHONE_NUMBER")]
    return [(_national_format(ctx, country, national), "PHONE_NUMBER")]


def _card_number(rng: random.Random) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("53", 16), ("55", 16), ("37", 15), ("6011", 16)))
    body = prefix + _random_digits(rng, length - len(prefix) - 1)
    return body + luhn_check_digit(body)


def _card(ctx: _Context, mode: str) -> list[Piece]:
    rng = ctx.rng
    number = _card_number(rng)
    if len(number) == 15:
        groups = [number[:4], number[4:10], number[10:]]
    else:
        groups = [number[i : i + 4] for i in range(0, 16, 4)]
    if mode == "card_separators":
        style = rng.randrange(4)
        if style == 0:
            value = rng.choice(ctx.styles.card_separators).join(groups)
        elif style == 1:
            value = number
        elif style == 2:  # uneven groups
            value = rng.choice((" ", ".", "-")).join(_groups(rng, number))
        else:  # a different separator between each group
            seps = ctx.styles.card_separators
            value = groups[0] + "".join(rng.choice(seps) + g for g in groups[1:])
        return [(value, "CREDIT_CARD")]
    return [(rng.choice((" ", "-")).join(groups), "CREDIT_CARD")]


@functools.cache
def _faker(locale: str) -> Any:
    from faker import Faker

    return Faker(locale)


def _iban_value(ctx: _Context) -> str:
    fake = _faker(_IBAN_LOCALES[ctx.language])
    fake.seed_instance(ctx.rng.getrandbits(32))
    return str(fake.iban())


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (any case, any separators) passes the ISO 13616 mod-97 check."""
    compact = re.sub(r"[^0-9A-Za-z]", "", iban).upper()
    if len(compact) < 15 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban(ctx: _Context, mode: str) -> list[Piece]:
    rng = ctx.rng
    compact = _iban_value(ctx)
    grouped = [compact[i : i + 4] for i in range(0, len(compact), 4)]
    if mode == "iban_variants":
        style = rng.randrange(5)
        if style == 0:
            value = " ".join(grouped).lower()
        elif style == 1:
            value = compact.lower()
        elif style == 2:
            value = " ".join(_groups(rng, compact))
        elif style == 3:  # broken by a line break between groups
            cut = rng.randrange(1, len(grouped))
            value = " ".join(grouped[:cut]) + rng.choice(("\n", "\n  ", "\r\n")) + " ".join(grouped[cut:])
        else:
            value = _case(rng, " ".join(grouped))
        return [(value, "IBAN_CODE")]
    return [(" ".join(grouped) if rng.random() < 0.7 else compact, "IBAN_CODE")]


def _us_ssn(rng: random.Random) -> tuple[str, str, str]:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}", f"{rng.randrange(1, 100):02d}", f"{rng.randrange(1, 10000):04d}"


def _de_tax_id(rng: random.Random) -> str:
    """German tax identification number: 11 digits, one digit twice in the first ten, ISO 7064 check."""
    while True:
        digits = rng.sample(range(10), 9)
        digits.insert(rng.randrange(1, 10), rng.choice(digits))
        if digits[0] != 0:
            break
    product = 10
    for digit in digits:
        total = (digit + product) % 10 or 10
        product = (total * 2) % 11
    check = (11 - product) % 10
    return "".join(map(str, digits)) + str(check)


def _fr_nir(rng: random.Random) -> str:
    """French social security number (NIR): 13 digits and the key 97 - (number mod 97)."""
    body = (
        f"{rng.choice((1, 2))}{rng.randrange(40, 100):02d}{rng.randrange(1, 13):02d}"
        f"{rng.choice([d for d in range(1, 96) if d != 20]):02d}{rng.randrange(1, 990):03d}"
        f"{rng.randrange(1, 1000):03d}"
    )
    return body + f"{97 - int(body) % 97:02d}"


def _es_dni(rng: random.Random) -> str:
    number = rng.randrange(10_000_000, 100_000_000)
    return f"{number}{'TRWAGMYFPDXBNJZSQVHLCKE'[number % 23]}"


def _nl_bsn(rng: random.Random) -> str:
    """Dutch citizen service number: 9 digits passing the eleven test."""
    while True:
        digits = [rng.randrange(10) for _ in range(8)]
        total = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True))
        last = total % 11
        if last < 10 and digits[0] != 0:
            return "".join(map(str, digits)) + str(last)


def _pt_nif(rng: random.Random) -> str:
    """Portuguese tax number of a person: 9 digits, first 1-3, mod-11 check digit."""
    digits = [rng.choice((1, 2, 3))] + [rng.randrange(10) for _ in range(7)]
    remainder = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
    return "".join(map(str, digits)) + str(0 if remainder < 2 else 11 - remainder)


def _it_fiscal_code(ctx: _Context) -> str:
    fake = _faker("it_IT")
    fake.seed_instance(ctx.rng.getrandbits(32))
    return str(fake.ssn())


def _national_id(ctx: _Context, mode: str) -> list[Piece]:
    rng, language = ctx.rng, ctx.language
    loose = mode == "national_id"
    parts: list[str]
    styles: tuple[str, ...]
    if language == "en":
        separator = rng.choice((" ", ".", "", " - ", "/", "  ")) if loose else "-"
        return [(separator.join(_us_ssn(rng)), "US_SSN")]
    if language == "de":
        number = _de_tax_id(rng)
        parts = [number[:2], number[2:5], number[5:8], number[8:]]
        value = rng.choice((" ", "", "/", ".")).join(parts) if loose else " ".join(parts)
    elif language == "fr":
        number = _fr_nir(rng)
        parts = [number[0], number[1:3], number[3:5], number[5:7], number[7:10], number[10:13], number[13:]]
        value = rng.choice((" ", "", ".", "-")).join(parts) if loose else " ".join(parts)
    elif language == "es":
        number = _es_dni(rng)
        styles = (
            number,
            f"{number[:2]}.{number[2:5]}.{number[5:8]}-{number[8]}",
            f"{number[:8]}-{number[8]}",
            f"{number[:8]} {number[8].lower()}",
            f"{number[:2]} {number[2:5]} {number[5:8]} {number[8]}",
        )
        value = rng.choice(styles) if loose else number
    elif language == "it":
        number = _it_fiscal_code(ctx)
        styles = (
            number.lower(),
            f"{number[:3]} {number[3:6]} {number[6:11]} {number[11:]}",
            number,
            f"{number[:6]}-{number[6:11]}-{number[11:]}",
        )
        value = rng.choice(styles) if loose else number
    elif language == "nl":
        number = _nl_bsn(rng)
        styles = (
            f"{number[:4]}.{number[4:6]}.{number[6:]}",
            number,
            f"{number[:3]} {number[3:6]} {number[6:]}",
            f"{number[:4]} {number[4:6]} {number[6:]}",
        )
        value = rng.choice(styles) if loose else number
    else:
        number = _pt_nif(rng)
        value = (
            rng.choice((" ", "", ".", "-")).join((number[:3], number[3:6], number[6:])) if loose else number
        )
    return [(value, "NATIONAL_ID")]


def _reference_value(rng: random.Random, entity_type: str, *, loose: bool) -> str:
    prefix = _REFERENCE_PREFIX[entity_type]
    number = str(rng.randrange(10_000, 9_999_999))
    if not loose:
        return rng.choice((f"{prefix}-{number}", number, f"{prefix}{number}"))
    style = rng.randrange(6)
    if style == 0:
        return " ".join(_groups(rng, number))
    if style == 1:
        return f"{prefix.lower()} {number}"
    if style == 2:
        return f"#{number[:3]}-{number[3:]}"
    if style == 3:
        return f"{rng.randrange(2019, 2026)}/{number}"
    if style == 4:
        return f"{prefix}.{number}".lower()
    return f"00{number}"


def _ref(ctx: _Context, mode: str) -> list[Piece]:
    rng, language = ctx.rng, ctx.language
    entity_type = rng.choice(("CUSTOMER_ID", "ACCOUNT_ID", "ORDER_ID", "TICKET_ID"))
    loose = mode == "reference_loose"
    labels = ctx.styles.loose_labels[language] if loose else _PLAIN_LABELS[language]
    label = rng.choice(labels[entity_type])
    gap = rng.choice(("", " ", "  ")) if loose and not label[-1].isalpha() else " "
    value = _reference_value(rng, entity_type, loose=loose)
    if label.endswith("#"):
        value = value.lstrip("#")
    return [(f"{label}{gap}", None), (value, entity_type)]


def _ip(ctx: _Context, mode: str) -> list[Piece]:
    rng = ctx.rng
    if rng.random() < 0.25:
        head = [rng.choice(("2a02", "2a01", "2001", "2003", "2a00"))] + [
            f"{rng.randrange(1, 0x10000):x}" for _ in range(3)
        ]
        tail = [f"{rng.randrange(1, 0x10000):x}" for _ in range(rng.choice((1, 2, 4)))]
        joiner = ":" if len(head) + len(tail) == 8 else "::"
        return [(":".join(head) + joiner + ":".join(tail), "IP_ADDRESS")]
    first = rng.choice((31, 46, 62, 78, 81, 85, 91, 93, 109, 145, 176, 185, 193, 212, 217))
    octets = [str(first)] + [str(rng.randrange(0, 256)) for _ in range(2)] + [str(rng.randrange(1, 255))]
    if mode != "ip_address":
        return [(".".join(octets), "IP_ADDRESS")]
    style = rng.randrange(4)
    if style == 0:
        return [(".".join(octets), "IP_ADDRESS")]
    if style == 1:
        return [(".".join(octets) + f":{rng.choice((443, 8080, 8443, 3389))}", "IP_ADDRESS")]
    if style == 2:
        return [("[.]".join(octets), "IP_ADDRESS")]
    return [(" . ".join(octets), "IP_ADDRESS")]


def _url(ctx: _Context, mode: str) -> list[Piece]:
    rng = ctx.rng
    shape = rng.choice(ctx.styles.url_shapes).replace("{host}", rng.choice(ctx.styles.url_hosts))
    pieces: list[Piece] = []
    cursor = 0
    for match in re.finditer(r"\{([A-Z_]+)\}", shape):
        pieces.append((shape[cursor : match.start()], None))
        entity_type = match.group(1)
        if entity_type == "EMAIL_ADDRESS":
            first, last = ctx.person
            address = f"{_email_local(rng, first, last)}@{rng.choice(ctx.styles.email_domains[ctx.language])}"
            value = address.replace("@", "%40") if rng.random() < 0.5 else address
        elif entity_type == "PERSON":
            first, last = ctx.person
            value = rng.choice((f"{first}+{last}", f"{first}%20{last}", f"{_fold(first)}.{_fold(last)}"))
        else:
            value = _reference_value(rng, entity_type, loose=False)
        pieces.append((value, entity_type))
        cursor = match.end()
    pieces.append((shape[cursor:], None))
    return [piece for piece in pieces if piece[0]]


def _year_words(year: int) -> str:
    """English year in words: 1985 -> "nineteen eighty-five"; 2003 -> "two thousand and three"."""
    if year >= 2000:
        rest = year - 2000
        return "two thousand" + (f" and {_DIGIT_WORDS['en'][rest]}" if 0 < rest < 10 else "")
    tens, ones = divmod(year % 100, 10)
    century = "nineteen" if year < 2000 else "twenty"
    if tens == 0:
        return f"{century} oh {_DIGIT_WORDS['en'][ones]}" if ones else f"{century} hundred"
    if tens == 1:
        teens = (
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        )
        return f"{century} {teens[ones]}"
    return f"{century} {_EN_TENS[tens]}" + (f"-{_DIGIT_WORDS['en'][ones]}" if ones else "")


def _dob(ctx: _Context, mode: str) -> list[Piece]:
    rng, language = ctx.rng, ctx.language
    year, month = rng.randrange(1941, 2006), rng.randrange(1, 13)
    day = rng.randrange(1, 13) if mode == "dob_words" else rng.randrange(1, 29)
    if mode == "dob_words":
        month_name = _MONTHS[language][month - 1]
        word = _DAY_WORDS[language][day - 1]
        if language == "en":
            suffix = _EN_SUFFIX.get(day, "th")
            value = rng.choice(
                (
                    f"the {word} of {month_name} {year}",
                    f"{month_name} the {word}, {year}",
                    f"{month_name} {day}{suffix}, {year}",
                    f"the {day}{suffix} of {month_name} {_year_words(year)}",
                    f"{word} {month_name} {_year_words(year)}",
                )
            )
        elif language == "de":
            value = rng.choice((f"{word} {month_name} {year}", f"{day}. {month_name} {year}"))
        elif language in ("es", "pt"):
            value = rng.choice((f"{word} de {month_name} de {year}", f"{day} de {month_name} de {year}"))
        else:
            value = rng.choice((f"{word} {month_name} {year}", f"{day} {month_name} {year}"))
        if rng.random() < 0.2:
            value = value.lower()
        return [(value, "DATE_OF_BIRTH")]
    short_year = f"{year % 100:02d}"
    forms: tuple[str, ...]
    if language == "en":
        forms = (
            f"{month:02d}/{day:02d}/{year}",
            f"{month}/{day}/{short_year}",
            f"{year}-{month:02d}-{day:02d}",
            f"{day:02d}/{month:02d}/{year}",
            f"{day}.{month}.{year}",
        )
    else:
        forms = (
            f"{day:02d}.{month:02d}.{year}",
            f"{day}.{month}.{short_year}",
            f"{day:02d}/{month:02d}/{year}",
            f"{day}-{month}-{year}",
            f"{year}-{month:02d}-{day:02d}",
            f"{day:02d} {month:02d} {year}",
        )
    if mode != "dob_numeric":
        forms = forms[:1] + forms[2:3]
    return [(rng.choice(forms), "DATE_OF_BIRTH")]


def _postcode(ctx: _Context, prefix: str) -> str:
    rng, language = ctx.rng, ctx.language
    if language == "nl":
        letters = "ABCEGHJKLNPRSTVWXZ"
        return f"{prefix}{rng.randrange(10)} {rng.choice(letters)}{rng.choice(letters)}"
    if language == "pt":
        return f"{prefix}-{rng.randrange(100, 1000)}"
    return prefix + _random_digits(rng, 5 - len(prefix))


def _address(ctx: _Context, mode: str) -> list[Piece]:
    rng, language, book = ctx.rng, ctx.language, ctx.book
    street = rng.choice(book.streets)
    town, prefix = rng.choice(book.towns)
    number = str(rng.randrange(1, 180)) + (
        rng.choice(("", "", "", "a", "b")) if language in ("de", "nl") else ""
    )
    if language == "en":
        flat = rng.choice(("", "", f"Flat {rng.randrange(1, 30)}, ", f"Apt {rng.randrange(1, 30)}, "))
        value = f"{flat}{number} {street}, {town}"
    elif language == "fr":
        value = f"{number}, {street}, {_postcode(ctx, prefix)} {town}"
    elif language == "es":
        value = f"{street}, {number}, {rng.randrange(1, 8)}º, {_postcode(ctx, prefix)} {town}"
    elif language == "pt":
        value = f"{street}, {number}, {_postcode(ctx, prefix)} {town}"
    else:
        value = f"{street} {number}, {_postcode(ctx, prefix)} {town}"
    return [(value, "STREET_ADDRESS")]


def _town(ctx: _Context, mode: str) -> list[Piece]:
    return [(ctx.rng.choice(ctx.book.towns)[0], "LOCATION")]


def _person(ctx: _Context, mode: str) -> list[Piece]:
    rng = ctx.rng
    first, last = ctx.person
    if mode != "person_name":
        return [(f"{first} {last}", "PERSON")]
    style = rng.randrange(5)
    if style == 0:
        value = f"{first} {last}".lower()
    elif style == 1:
        value = f"{first} {last}".upper()
    elif style == 2:
        value = f"{first} {rng.choice('BCDFGHJKLMNPRSTW')}. {last}"
    elif style == 3:
        value = f"{first[0]}. {last}"
    else:
        value = f"{last}, {first}"
    return [(value, "PERSON")]


def _first(ctx: _Context, mode: str) -> list[Piece]:
    first = ctx.person[0]
    return [(first.lower() if mode == "person_name" and ctx.rng.random() < 0.5 else first, "PERSON")]


_MAKERS: Mapping[str, Callable[[_Context, str], list[Piece]]] = {
    "person": _person,
    "first": _first,
    "email": _email,
    "phone": _phone,
    "card": _card,
    "iban": _iban,
    "id": _national_id,
    "ref": _ref,
    "ip": _ip,
    "url": _url,
    "dob": _dob,
    "address": _address,
    "town": _town,
}

# ---------------------------------------------------------------------------------------------------------
# Fillers of negatives: numbers and times that are not personal data.


def _nonluhn(rng: random.Random) -> str:
    body = rng.choice(("4", "5", "6")) + _random_digits(rng, 14)
    check = (int(luhn_check_digit(body)) + rng.randrange(1, 10)) % 10
    number = body + str(check)
    return rng.choice(
        (
            " ".join(number[i : i + 4] for i in range(0, 16, 4)),
            number,
            "-".join(number[i : i + 4] for i in range(0, 16, 4)),
        )
    )


def _filler(rng: random.Random, language: str, name: str) -> str:
    if name == "nonluhn":
        return _nonluhn(rng)
    if name == "version":
        return f"{rng.randrange(1, 15)}.{rng.randrange(0, 10)}.{rng.randrange(0, 30)}"
    if name == "qty":
        return str(rng.randrange(2, 12))
    if name == "time":
        hour, minute = rng.randrange(7, 21), rng.choice((0, 15, 30, 45))
        if language == "en":
            return rng.choice(
                (f"{hour}:{minute:02d}", f"{hour % 12 or 12}.{minute:02d} {'am' if hour < 12 else 'pm'}")
            )
        if language in ("fr", "pt"):
            return f"{hour}h{minute:02d}"
        return rng.choice((f"{hour}:{minute:02d}", f"{hour}.{minute:02d}"))
    if name == "price":
        whole, cents = rng.randrange(1, 2500), rng.randrange(0, 100)
        if language == "en":
            return rng.choice((f"${whole:,}.{cents:02d}", f"£{whole}.{cents:02d}"))
        amount = f"{whole:,}".replace(",", ".") + f",{cents:02d}"
        return rng.choice((f"{amount} €", f"€ {amount}", f"{amount} EUR"))
    # A recent date (an order or a delivery), never a birth date.
    day, month = rng.randrange(1, 29), rng.randrange(1, 13)
    if language == "en":
        return rng.choice((f"{_MONTHS['en'][month - 1]} {day}", f"{day} {_MONTHS['en'][month - 1]}"))
    numeric = f"{day:02d}.{month:02d}." if language == "de" else f"{day:02d}/{month:02d}"
    return rng.choice((f"{day} {_MONTHS[language][month - 1]}", numeric))


# ---------------------------------------------------------------------------------------------------------
# Messages.


def kind_names() -> tuple[str, ...]:
    """Every kind, in cycle order."""
    return tuple(KINDS)


def _templates_with(half: Half, language: str, slots: Sequence[str]) -> list[str]:
    templates = half.templates[language]
    if not slots:
        return list(templates)
    return [t for t in templates if any(f"{{{slot}}}" in t for slot in slots)]


def _fill(ctx: _Context, template: str, focus: str | None) -> tuple[str, tuple[GoldSpan, ...]]:
    """Fill a carrier template: the first slot of type ``focus`` gets the kind's treatment, the rest plain."""
    text_parts: list[str] = []
    spans: list[GoldSpan] = []
    length = 0
    cursor = 0
    focused = False
    whole_message = ctx.kind.startswith("lang_")
    for match in _SLOT.finditer(template):
        literal = template[cursor : match.start()]
        text_parts.append(literal)
        length += len(literal)
        slot = match.group(1)
        is_focus = not focused and slot == focus
        focused = focused or is_focus
        mode = ctx.kind if is_focus else "plain"
        pieces = _MAKERS[slot](ctx, mode)
        if is_focus and ctx.kind == "letter_case":
            pieces = [(_case(ctx.rng, text), entity) for text, entity in pieces]
        if is_focus and ctx.kind == "broken_formatting":
            pieces = [(_break(ctx.rng, text) if entity else text, entity) for text, entity in pieces]
        span_kind = ctx.kind if (is_focus or whole_message) else "plain"
        for text, entity in pieces:
            if entity is not None:
                spans.append(GoldSpan(entity, length, length + len(text), span_kind))
            text_parts.append(text)
            length += len(text)
        cursor = match.end()
    text_parts.append(template[cursor:])
    return "".join(text_parts), tuple(spans)


def make_sample(
    half: Half, kind: str, seed: int, *, index: int = -1, language: str | None = None
) -> RedTeamSample:
    """One message of ``kind`` drawn with ``seed`` from ``half``'s templates (same seed, same message).

    ``language`` fixes the language instead of drawing it (it must be one of the kind's); the rest of the
    message is drawn as without it.
    """
    spec = KINDS[kind]
    rng = random.Random(f"{half.name}:{half.seed}:{kind}:{seed}")
    drawn = rng.choice(spec.languages)
    if language is not None and language not in spec.languages:
        raise ValueError(f"kind {kind!r} has no {language!r} messages; its languages: {spec.languages}")
    language = language or drawn
    if kind.startswith("negative_"):
        templates = half.negatives[kind][language]
        template = rng.choice(templates)
        text = _SLOT.sub(lambda m: _filler(rng, language, m.group(1)), template)
        return RedTeamSample(text, (), kind, language, half.name, index)
    book = half.names[language]
    ctx = _Context(rng, half, language, kind, (rng.choice(book.first), rng.choice(book.last)))
    candidates = _templates_with(half, language, spec.slots)
    if not candidates:
        raise ValueError(f"half {half.name!r} has no {language} template with a slot of kind {kind!r}")
    template = rng.choice(candidates)
    present = [slot for slot in spec.slots if f"{{{slot}}}" in template]
    focus = rng.choice(present) if present else None
    text, spans = _fill(ctx, template, focus)
    return RedTeamSample(text, spans, kind, language, half.name, index)


def generate(half: str | Half, count: int | None = None) -> list[RedTeamSample]:
    """The first ``count`` messages of a half (``DEFAULT_COUNT`` by default); kinds cycle in ``KINDS`` order.

    Any prefix of the list is itself balanced across kinds, so a short run (``--count``) samples every kind.
    """
    spec = HALVES[half] if isinstance(half, str) else half
    kinds = kind_names()
    total = DEFAULT_COUNT if count is None else count
    return [
        make_sample(spec, kinds[index % len(kinds)], seed=index // len(kinds) + spec.seed, index=index)
        for index in range(total)
    ]


def person_names(half: Half) -> set[str]:
    """Every first name and surname of a half, for the disjointness check against the detector's lists."""
    return {name for book in half.names.values() for name in (*book.first, *book.last)}
